"""Webhooks: an outbox written with each change (outbox), the address guard (guard), Standard Webhooks
signing (signing), and the Celery task that sends (delivery) fed by the relay (relay, consumer)."""
