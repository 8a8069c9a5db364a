// Recompiles this crate when the build switches to another checkout (see the included file).
include!("../build/checkout.rs");

fn main() {
    track_checkout();
}
