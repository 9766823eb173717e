"""The user table: htpasswd hashes, groups, the live store and file editing."""
