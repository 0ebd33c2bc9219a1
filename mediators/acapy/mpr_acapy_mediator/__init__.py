"""The runnable ACA-Py mediator's own parts (mediators/acapy): `-it mpr_acapy_mediator.http`."""
