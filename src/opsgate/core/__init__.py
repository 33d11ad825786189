"""The control layer: registry, policy, gateway, audit. No web framework imports here."""
