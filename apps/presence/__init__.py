"""Presence: connection registry, heartbeats, presence subscriptions and typing."""
