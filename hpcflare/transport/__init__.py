"""Moving metadata and tensors between ranks: framing/codec, and the gRPC transport."""
