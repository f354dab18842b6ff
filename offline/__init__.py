"""offline: learning from logged Minari datasets (IQL, CQL, BC) and generating them from online/ policies."""
