"""ticketlab: find, test and deploy sparse subnetworks of neural networks."""

__version__ = "0.1.0"
