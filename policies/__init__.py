"""The pure policy library shared by the simulator and the live runtime.

Nothing here imports simpy, torch, asyncio, odhsim or runtime, and nothing reads the clock: time comes in as `now`
and randomness from an injected numpy Generator (a test walks the imports).
"""
