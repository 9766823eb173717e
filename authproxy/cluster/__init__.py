"""What the processes of one service share: the control channel, its typed messages, bans and
known addresses, the endpoint's key set.
"""
