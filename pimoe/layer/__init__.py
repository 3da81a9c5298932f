"""The PiMoE layer: configs, expert types and networks, the router and its routing record, losses, dispatch, checks."""
