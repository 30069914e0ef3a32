"""Model objects: gates and margins, input laws, routers, experts, MoE and teachers (no estimation here)."""
