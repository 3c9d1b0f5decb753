"""Reading, checking, splitting and batching records."""
