"""streamscore: real-time churn and customer-value scoring for online shops."""

__version__ = "0.1.0"
