//! ferrolb's controller: allocates LoadBalancer IPs from `IPPool`s and writes them into
//! Service status. The allocator and reconcile arrive with the controller issue; this
//! crate exists so the workspace has its final shape from the start.
