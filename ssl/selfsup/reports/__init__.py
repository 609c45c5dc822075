"""Things written for people to look at: figures and report pages saved in run directories."""
