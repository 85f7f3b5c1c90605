"""The index daemon: users, tokens, and which peer holds which files under which keyword."""
