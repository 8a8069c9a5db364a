// Recompiles the fuzz target when the build switches to another checkout (see the included
// file): it takes the speaker's codec sources by path.
include!("../../build/checkout.rs");

fn main() {
    track_checkout();
}
