"""A running cluster seen over SSH: sessions (`ssh`), health checks (`health`), functional checks."""
