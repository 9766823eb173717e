"""The user table: htpasswd hashes, groups, the live store and file editing."""

NEW_HASH_SCHEMES = ("bcrypt", "argon2id")  # what userfile.hash_password writes
