"""Monitoring wiring: the RPO sensor and checks, run alerts, the backup health report."""
