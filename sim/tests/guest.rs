//! A scheduler written with the guest SDK — the code the hello scheduler
//! component runs — driven natively on the simulator against the real
//! master and agent cores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use stoa_guest::scheduler::{
    Driver, MessageSource, Offer, Program, TaskSpec, TaskState, TaskStatus, WasmProgram, cpus_mem,
};
use stoa_sim::guest::{Framework, Guest};
use stoa_sim::{Sim, SimConfig};

fn hello(_framework: usize) -> Box<dyn Framework> {
    let digest = format!("sha256:{}", "ab".repeat(32));
    Box::new(Guest::new(hello_wasm_scheduler::Hello::new(digest, 25)))
}

#[test]
fn the_hello_scheduler_runs_natively_on_the_simulator() {
    let config = SimConfig {
        agents: 4,
        frameworks: 3,
        tasks_per_framework: 25,
        framework: Some(hello),
        ..SimConfig::default()
    };
    let outcome = Sim::new(config.clone()).run(Duration::from_secs(120));
    assert_eq!(outcome.finished, vec![25, 25, 25], "{:?}", outcome.failed);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    // Deterministic as the built-in scheduler is: the same seed, the same run.
    let again = Sim::new(config).run(Duration::from_secs(120));
    assert_eq!(outcome, again);
}

/// Launches its tasks and sends each a message once it runs; counts in
/// [`ANSWERED`] the answers that came back from the task they were sent to
/// (the simulated executor answers every message with it).
#[derive(Debug, Default)]
struct Chatty {
    launched: bool,
}

/// Answers Chatty got: the simulator owns the scheduler, so it reports here.
static ANSWERED: AtomicUsize = AtomicUsize::new(0);

const CHATTY_TASKS: usize = 6;

impl stoa_guest::scheduler::Scheduler for Chatty {
    fn offers(&mut self, driver: &mut dyn Driver, offers: Vec<Offer>) {
        for offer in offers {
            if self.launched {
                driver.decline(&[offer.id], None);
                continue;
            }
            self.launched = true;
            let tasks = (0..CHATTY_TASKS)
                .map(|i| TaskSpec {
                    // The simulator counts `task-N` greeting `task-N`.
                    id: format!("task-{i}"),
                    name: format!("chatty {i}"),
                    resources: cpus_mem(0.1, 32.0),
                    program: Program::Wasm(WasmProgram {
                        artifact: format!("sha256:{}", "ab".repeat(32)),
                        input: format!("task-{i}").into_bytes(),
                        args: Vec::new(),
                        env: Vec::new(),
                    }),
                    timeout_ms: None,
                    fuel: None,
                })
                .collect();
            driver.accept(&[offer.id], tasks, None);
        }
    }

    fn update(&mut self, driver: &mut dyn Driver, status: &TaskStatus) {
        if status.state == TaskState::Running {
            let ping = format!("ping {}", status.task_id);
            driver.send_message(&status.task_id, ping.as_bytes());
        }
    }

    fn message(&mut self, _: &mut dyn Driver, source: Option<&MessageSource>, data: &[u8]) {
        if source.is_some_and(|s| data == format!("ping {}", s.task_id).as_bytes()) {
            ANSWERED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn a_guest_scheduler_and_its_tasks_exchange_messages() {
    let config = SimConfig {
        agents: 2,
        frameworks: 1,
        tasks_per_framework: CHATTY_TASKS,
        // Long enough that every answer comes back before its task ends.
        task_time: (Duration::from_millis(100), Duration::from_millis(200)),
        framework: Some(|_| Box::new(Guest::new(Chatty::default()))),
        full_trace: true,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(config);
    let outcome = sim.run(Duration::from_secs(60));
    assert_eq!(outcome.finished, vec![CHATTY_TASKS], "{:?}", outcome.failed);
    let trace = sim.trace();
    let answers: Vec<&String> = trace
        .iter()
        .filter(|line| line.contains("master -> fw-0 Message 11 bytes from task-"))
        .collect();
    assert_eq!(answers.len(), CHATTY_TASKS, "{:#?}", sim.trace());
    assert_eq!(ANSWERED.load(Ordering::Relaxed), CHATTY_TASKS);
}
