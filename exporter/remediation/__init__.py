"""Alert-driven remediation: webhook, routing, planning and executing image deletions safely."""
