import java.nio.file.Path;
import java.time.Duration;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.BoltConnectorInternalSettings;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.io.ByteUnit;

/**
 * Embedded Neo4j 5.26 with authentication ON, for the tests that need a wrong password refused
 * (tests/harness/neo4j_auth_server.py). Run in Java's source-file mode on the classpath of the
 * built test launcher (.tools/neo4j-launcher), so it needs no build of its own:
 * {@code java -cp .tools/neo4j-launcher/neo4j-launcher.jar Neo4jAuthLauncher.java PORT DATA_DIR PASSWORD}.
 * The password is read from the environment variable named by the third argument (never argv).
 * Prints READY once Bolt serves; stops when stdin closes.
 */
public final class Neo4jAuthLauncher {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        String password = System.getenv(args[2]);
        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(Path.of(args[1]).toAbsolutePath())
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(BoltConnector.encryption_level, BoltConnector.EncryptionLevel.DISABLED)
                .setConfig(GraphDatabaseSettings.auth_enabled, true)
                .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(32))
                .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                .setConfig(BoltConnectorInternalSettings.enable_local_connector, false)
                .setConfig(BoltConnectorInternalSettings.thread_pool_shutdown_wait_time, Duration.ofMillis(500))
                .setConfig(BoltConnectorInternalSettings.connection_shutdown_wait_time, Duration.ofMillis(500))
                .build();
        Runtime.getRuntime().addShutdownHook(new Thread(dbms::shutdown, "neo4j-auth-launcher-shutdown"));
        dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME).isAvailable(Duration.ofSeconds(120).toMillis());
        dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME).executeTransactionally(
                "ALTER USER neo4j SET PASSWORD $password CHANGE NOT REQUIRED", java.util.Map.of("password", password));
        System.out.println("READY bolt://127.0.0.1:" + port);
        System.out.flush();
        while (System.in.read() != -1) {
            // the parent closes stdin (or dies): stop
        }
        System.exit(0);
    }
}
