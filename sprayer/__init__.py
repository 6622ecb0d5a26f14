"""Owns the virtual IP and steers IKE to keyd and each client's ESP to its node."""
