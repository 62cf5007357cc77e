"""Storage targets behind one interface (base): a local directory, S3, Azure Blob."""
