"""Test helpers shipped with autotune: misbehaving workloads to exercise failure handling."""
