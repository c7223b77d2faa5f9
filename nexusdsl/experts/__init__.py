"""Experts from elsewhere: routers and dispatch for `moe`, and modules of open-weight models
loaded as (frozen) experts. Importing this package does not import torch."""
