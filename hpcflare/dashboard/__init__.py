"""``hpcflare dashboard``: a live, read-only web page over job folders (needs ``hpcflare[dashboard]``)."""
