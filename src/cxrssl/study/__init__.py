"""Studies: a configured set of (method, K labelled images, seed) units, cached, and a report."""
