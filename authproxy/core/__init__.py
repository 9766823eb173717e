"""The decision core: identities, policies, who is asking, the scheme chain, the lockout, the
caches, and the Decider. No web framework.
"""
