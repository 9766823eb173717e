"""The HTTP edge: our own HTTP/1.1 protocol, the server, the app that wires everything, and the
endpoints other than the decision.
"""
