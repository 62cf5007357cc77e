package aegis.tests;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.BoltConnectorInternalSettings;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.io.ByteUnit;

/**
 * Embedded Neo4j 5.26 (community) with only the Bolt connector, for tests.
 *
 * <p>Usage: {@code java -Xmx512m -jar neo4j-launcher.jar PORT DATA_DIR [--exit-on-stdin-eof]}.
 * Prints {@code READY bolt://127.0.0.1:PORT} once Bolt accepts TCP connections and the default
 * database is available; shuts the DBMS down cleanly on SIGTERM (JVM shutdown hook) and prints
 * {@code STOPPED}. With {@code --exit-on-stdin-eof} it also stops when its stdin closes, so a
 * killed test runner never leaves an orphan JVM behind.
 */
public final class Neo4jLauncher {
    private Neo4jLauncher() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: neo4j-launcher PORT DATA_DIR [--exit-on-stdin-eof]");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        Path home = Path.of(args[1]).toAbsolutePath();
        boolean exitOnEof = args.length > 2 && "--exit-on-stdin-eof".equals(args[2]);

        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(BoltConnector.encryption_level, BoltConnector.EncryptionLevel.DISABLED)
                // tests connect without credentials; this server only listens on loopback
                .setConfig(GraphDatabaseSettings.auth_enabled, false)
                // small footprint: the test graphs are tiny and CI boxes have little RAM
                .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(64))
                .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                // the in-process loopback connector is for Neo4j's own tools; skipping it saves start-up time
                .setConfig(BoltConnectorInternalSettings.enable_local_connector, false)
                // stock Bolt shutdown waits 2 x 5 s for idle Netty pools; tests want a quick, still clean, stop
                .setConfig(BoltConnectorInternalSettings.thread_pool_shutdown_wait_time, Duration.ofMillis(500))
                .setConfig(BoltConnectorInternalSettings.connection_shutdown_wait_time, Duration.ofMillis(500))
                .build();

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            dbms.shutdown();
            System.out.println("STOPPED");
            System.out.flush();
            stopped.countDown();
        }, "neo4j-launcher-shutdown"));

        GraphDatabaseService db = dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME);
        if (!db.isAvailable(Duration.ofSeconds(120).toMillis())) {
            System.err.println("default database did not become available");
            System.exit(1);
        }
        waitForBolt(port);
        System.out.println("READY bolt://127.0.0.1:" + port);
        System.out.flush();

        if (exitOnEof) {
            // blocks until the parent closes our stdin (or dies); then stop via the shutdown hook
            while (System.in.read() != -1) {
                // discard input
            }
            System.exit(0);
        }
        stopped.await();
    }

    /** Bolt starts with the DBMS, but only a real TCP connect proves the port is bound. */
    private static void waitForBolt(int port) throws InterruptedException {
        long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
        while (true) {
            try (Socket s = new Socket()) {
                s.connect(new InetSocketAddress("127.0.0.1", port), 1000);
                return;
            } catch (IOException e) {
                if (System.nanoTime() > deadline) {
                    System.err.println("Bolt did not accept connections on port " + port + ": " + e);
                    System.exit(1);
                }
                Thread.sleep(100);
            }
        }
    }
}
