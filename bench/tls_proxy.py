"""An HTTPS front for the benches' emulated object stores, so pgBackRest can use them too.

pgBackRest speaks to S3 and Azure over TLS only, and moto's own ``--ssl`` server (werkzeug) drops every
kept-alive connection without a TLS close, which pgBackRest retries for a minute. nginx (Debian's
``nginx-light``) terminates TLS with a throwaway certificate for 127.0.0.1 and forwards to the plain-http
server over kept-alive connections; the benches point Aegis at the same front (``AWS_CA_BUNDLE`` trusts the
certificate), so both tools pay the same TLS and the same hop, and store into the same server.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
_CONF = """worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_max_body_size 0;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  proxy_request_buffering off;
  proxy_buffering off;
  upstream store {{ server 127.0.0.1:{upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {dir}/cert.pem;
    ssl_certificate_key {dir}/key.pem;
    location / {{
      proxy_pass http://store;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
    }}
  }}
}}
"""


def available() -> bool:
    return Path(NGINX).exists() and shutil.which("openssl") is not None


class TlsProxy:
    """``https://127.0.0.1:<port>`` in front of ``http://127.0.0.1:<upstream>``; ``cert`` is its CA."""

    def __init__(self, workdir: Path, upstream: int, port: int) -> None:
        self.dir = workdir
        self.port = port
        self.cert = workdir / "cert.pem"
        for sub in ("body", "proxy"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-keyout", str(workdir / "key.pem"), "-out", str(self.cert), "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        self.cert.chmod(0o644)
        conf = workdir / "nginx.conf"
        conf.write_text(_CONF.format(dir=workdir, upstream=upstream, port=port))
        self.process = subprocess.Popen([NGINX, "-c", str(conf), "-g", "daemon off;"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from tests.harness.storage_servers import wait_for_port

        wait_for_port(port, 15, alive=lambda: self.process.poll() is None)

    @property
    def endpoint_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
