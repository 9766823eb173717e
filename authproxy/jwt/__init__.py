"""Bearer tokens' keys and checks: JOSE pre-checks, claims, key sets, the key ring, its
refresher and the fetchers.
"""
