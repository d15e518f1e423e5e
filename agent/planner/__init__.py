"""Placement: a cost model over layer profiles and Capabilities, and the search for the cheapest plan."""
