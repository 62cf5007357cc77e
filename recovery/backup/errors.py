"""Errors of the Neo4j and Milvus exporters, in a module without their drivers.

The CLI catches these for every command; importing them from the exporters would load pymilvus
(pandas, pyarrow, grpc) and neo4j into each ``aegis`` process — +135 MiB and ~2 s on every
``aegis wal push`` that PostgreSQL runs per WAL segment.
"""


class Neo4jExportError(Exception):
    """A problem with a Neo4j export or import that the operator can act on (the message says how)."""


class DatabaseNotEmptyError(Neo4jExportError):
    """The import target already holds data or schema."""


class CorruptExportError(Neo4jExportError):
    """The stream is truncated, not an Aegis Neo4j export, or disagrees with itself or with the result."""


class MilvusBackupError(Exception):
    """A Milvus export or import that cannot proceed; the message says what to do."""


class CollectionExistsError(MilvusBackupError):
    """The import target already exists; imports only ever create a fresh collection."""


class ExportFormatError(MilvusBackupError):
    """The stream is not a complete export this module can read."""
