"""IKEv2 responder that negotiates on behalf of the cluster virtual IP."""
