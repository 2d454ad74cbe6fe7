"""DKIM and ARC: key material, signing, verifying and the ARC seal (pure, on OpenSSL)."""
