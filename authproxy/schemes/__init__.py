"""The authenticators: Basic and Bearer, one module each."""
