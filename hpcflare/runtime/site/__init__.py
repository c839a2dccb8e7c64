"""A site's link to its parent: agent, connection, tasks, result sender, track records, site hooks."""
