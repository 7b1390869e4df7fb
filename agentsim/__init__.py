"""agentsim: the reference agent chat server of chatprobe (netra wire format, JWT auth, resume, fault injection)."""
