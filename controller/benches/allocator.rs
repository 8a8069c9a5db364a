//! Allocator throughput and memory at scale: `cargo bench -p ferrolb-controller --bench
//! allocator` (or `make bench`). Prints a Markdown table; the committed report is in
//! docs/benchmarks.md. Timings are medians over rounds, not asserted anywhere.

use std::time::Instant;

use ferrolb_controller::allocator::pool::Pool;
use ferrolb_controller::allocator::{Allocator, FamilyPolicy, ServiceKey, ServiceRequest};
use ferrolb_crds::{Family, IPPoolSpec};

fn rss_kib() -> u64 {
    ferrolb_e2e::process::memory_kib(std::process::id()).map_or(0, |(rss, _)| rss)
}

fn request(i: usize, family: Family) -> ServiceRequest {
    ServiceRequest {
        key: ServiceKey::new("bench", &format!("svc-{i:06}")),
        labels: Default::default(),
        namespace_labels: Default::default(),
        families: vec![family],
        policy: FamilyPolicy::SingleStack,
        requested: Vec::new(),
        pool: None,
        sharing: None,
    }
}

struct Row {
    case: String,
    n: usize,
    alloc_ops: f64,
    first_k_us: f64,
    last_k_us: f64,
    release_ops: f64,
    rss_mib: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run(case: &str, cidr: &str, family: Family, n: usize, rounds: usize) -> Row {
    let spec: IPPoolSpec = match serde_json::from_value(serde_json::json!({ "addresses": [cidr] }))
    {
        Ok(s) => s,
        Err(e) => panic!("bad pool {cidr}: {e}"),
    };
    let reqs: Vec<ServiceRequest> = (0..n).map(|i| request(i, family)).collect();
    let (mut alloc_ops, mut release_ops, mut first, mut last, mut rss) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let before = rss_kib();
        let mut a = Allocator::new();
        a.set_pool(Pool::from_spec("bench", Some(0), &spec));
        let t = Instant::now();
        let mut t_first = 0.0;
        let mut t_last_start = None;
        for (i, r) in reqs.iter().enumerate() {
            if i == n - 1000 {
                t_last_start = Some(Instant::now());
            }
            let o = a.ensure(r);
            assert!(
                o.failure.is_none(),
                "{case}: allocation {i} failed: {:?}",
                o.failure
            );
            if i == 999 {
                t_first = t.elapsed().as_secs_f64();
            }
        }
        let total = t.elapsed().as_secs_f64();
        let t_last = t_last_start
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        // Only the first round starts from a fresh heap; later ones reuse its memory.
        if rss.is_empty() {
            rss.push((rss_kib().saturating_sub(before)) as f64 / 1024.0);
        }
        alloc_ops.push(n as f64 / total);
        first.push(t_first / 1000.0 * 1e6);
        last.push(t_last / 1000.0 * 1e6);
        let t = Instant::now();
        for r in &reqs {
            a.release(&r.key);
        }
        release_ops.push(n as f64 / t.elapsed().as_secs_f64());
        assert_eq!(
            a.report("bench")
                .and_then(|r| match family {
                    Family::V4 => r.v4,
                    Family::V6 => r.v6,
                })
                .map(|u| u.used),
            Some(0)
        );
    }
    Row {
        case: case.into(),
        n,
        alloc_ops: median(alloc_ops),
        first_k_us: median(first),
        last_k_us: median(last),
        release_ops: median(release_ops),
        rss_mib: median(rss),
    }
}

const CASES: [(&str, &str, Family, usize); 4] = [
    ("IPv4 /16, every address", "10.0.0.0/16", Family::V4, 65_536),
    ("IPv4 /8", "10.0.0.0/8", Family::V4, 100_000),
    ("IPv6 /64", "2001:db8::/64", Family::V6, 100_000),
    ("IPv6 /48", "2001:db8::/48", Family::V6, 100_000),
];

fn main() {
    let rounds = 5;
    let args: Vec<String> = std::env::args().collect();
    // Each case runs in a fresh process so that its memory figure starts from a clean heap.
    if let Some(i) = args
        .iter()
        .position(|a| a == "--case")
        .and_then(|p| args.get(p + 1)?.parse::<usize>().ok())
    {
        let (case, cidr, family, n) = CASES[i];
        let r = run(case, cidr, family, n, rounds);
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} |",
            r.case, r.n, r.alloc_ops, r.first_k_us, r.last_k_us, r.release_ops, r.rss_mib
        );
        return;
    }
    println!(
        "| pool | allocations | allocate ops/s | µs/op, first 1000 | µs/op, last 1000 | release ops/s | RSS growth (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for i in 0..CASES.len() {
        let out = std::process::Command::new(&args[0])
            .args(["--case", &i.to_string()])
            .output();
        match out {
            Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
            Ok(o) => eprintln!("case {i} failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("case {i}: {e}"),
        }
    }
    println!(
        "\nmedian of {rounds} rounds per case, each case in a fresh process; release build; RSS growth is the resident-set increase of the first round while all allocations are held."
    );
}
