"""The demo's digit models, a deliberately faulty release, and the cascade's evaluation."""
