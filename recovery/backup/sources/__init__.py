"""What is backed up: PostgreSQL (base backups, dumps), Neo4j and Milvus exports."""
