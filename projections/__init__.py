"""Read side: projectors (pure fold + thin SQL), queries, and the projection runner."""
