"""The deployed shape: container files, Helm values, a real daemon, the UI in a browser."""
