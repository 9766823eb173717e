"""Tools for trying authproxy out: the demo, local certificates and token issuer, and the
harness the demo, tests and benchmarks share.
"""
