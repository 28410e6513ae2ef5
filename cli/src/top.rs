//! `stoa top`: a live terminal view of the cluster (ratatui): allocation
//! by role and by framework, tasks launched and ended per second, agents.
//! One operator connection serves every refresh. A tenant (`--identity`)
//! sees its own frameworks; roles and agents are the operator's.

use crate::operator::{Target, refused_is_error};
use anyhow::bail;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use stoa_client::OperatorSession;
use stoa_proto::operator::{
    AgentStatus, ClusterSummary, FrameworkStatus, OperatorCall, OperatorReply, RoleStatus,
};
use stoa_proto::{Resources, TaskState};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print one frame as text and exit (for scripts and logs), after two
    /// looks `--interval` apart so the rates are real.
    #[arg(long)]
    once: bool,
    /// Width of the frame `--once` prints.
    #[arg(long, default_value_t = 120)]
    width: u16,
}

/// Samples of the task rates kept for the sparklines.
const RATE_HISTORY: usize = 120;

/// One look at the cluster.
struct View {
    summary: ClusterSummary,
    frameworks: Vec<FrameworkStatus>,
    /// `None` for a tenant: roles and agents are the operator's.
    roles: Option<Vec<RoleStatus>>,
    agents: Option<Vec<AgentStatus>>,
}

/// What the screen shows: the latest view and the rates over time.
#[derive(Default)]
struct Screen {
    view: Option<View>,
    launched: VecDeque<u64>,
    ended: VecDeque<u64>,
    last: Option<(Instant, u64, u64)>,
    error: Option<String>,
}

impl Screen {
    fn update(&mut self, view: View) {
        let now = Instant::now();
        let (launched, ended) = (view.summary.tasks_launched, view.summary.tasks_ended);
        if let Some((at, l, e)) = self.last {
            let secs = now.duration_since(at).as_secs_f64().max(1e-3);
            let rate = |now: u64, before: u64| (now.saturating_sub(before) as f64 / secs) as u64;
            push(&mut self.launched, rate(launched, l));
            push(&mut self.ended, rate(ended, e));
        }
        self.last = Some((now, launched, ended));
        self.view = Some(view);
        self.error = None;
    }
}

fn push(list: &mut VecDeque<u64>, v: u64) {
    list.push_back(v);
    while list.len() > RATE_HISTORY {
        list.pop_front();
    }
}

async fn look(session: &mut OperatorSession) -> anyhow::Result<View> {
    let OperatorReply::Summary(summary) =
        refused_is_error(session.call(&OperatorCall::GetSummary).await?)?
    else {
        bail!("the master answered something other than a summary");
    };
    let OperatorReply::Frameworks(frameworks) =
        refused_is_error(session.call(&OperatorCall::GetFrameworks).await?)?
    else {
        bail!("the master answered something other than a framework list");
    };
    let roles = match session.call(&OperatorCall::GetRoles).await? {
        OperatorReply::Roles(roles) => Some(roles),
        _ => None,
    };
    let agents = match session.call(&OperatorCall::GetAgents).await? {
        OperatorReply::Agents(agents) => Some(agents),
        _ => None,
    };
    Ok(View {
        summary,
        frameworks,
        roles,
        agents,
    })
}

pub async fn top(a: TopArgs) -> anyhow::Result<()> {
    if !(a.interval.is_finite() && a.interval >= 0.05) {
        bail!("--interval must be at least 0.05 seconds");
    }
    let interval = Duration::from_secs_f64(a.interval);
    let mut session = OperatorSession::connect(&a.target.config()).await?;
    let mut screen = Screen::default();
    if a.once {
        screen.update(look(&mut session).await?);
        tokio::time::sleep(interval).await;
        screen.update(look(&mut session).await?);
        session.close();
        return print_once(&screen, a.width);
    }
    let mut terminal = ratatui::init();
    let result = run_live(&mut terminal, &mut session, &mut screen, interval).await;
    ratatui::restore();
    session.close();
    result
}

/// Redraws every `interval` until q, Esc or Ctrl-C.
async fn run_live(
    terminal: &mut ratatui::DefaultTerminal,
    session: &mut OperatorSession,
    screen: &mut Screen,
    interval: Duration,
) -> anyhow::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            match look(session).await {
                Ok(view) => screen.update(view),
                Err(e) => screen.error = Some(format!("{e:#}")),
            }
            next = Instant::now() + interval;
        }
        terminal.draw(|f| draw(f, screen))?;
        let wait = next.saturating_duration_since(Instant::now());
        // Keys are read on a blocking thread: crossterm's poll blocks.
        let key = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Event>> {
            if event::poll(wait)? {
                Ok(Some(event::read()?))
            } else {
                Ok(None)
            }
        })
        .await??;
        if let Some(Event::Key(k)) = key {
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                return Ok(());
            }
        }
    }
}

/// Renders one frame into a buffer and prints it as lines of text.
fn print_once(screen: &Screen, width: u16) -> anyhow::Result<()> {
    let backend = ratatui::backend::TestBackend::new(width.max(60), 40);
    let mut terminal = ratatui::Terminal::new(backend)?;
    terminal.draw(|f| draw(f, screen))?;
    let buffer = terminal.backend().buffer();
    let area = buffer.area;
    for y in 0..area.height {
        let line: String = (0..area.width)
            .map(|x| buffer[(x, y)].symbol().to_string())
            .collect();
        println!("{}", line.trim_end());
    }
    Ok(())
}

fn cpus(r: &Resources) -> f64 {
    r.millicpus() as f64 / 1000.0
}

fn amount(list: &[(String, u64)], kind: &str) -> u64 {
    list.iter().find(|(k, _)| k == kind).map_or(0, |(_, v)| *v)
}

/// `share` of `width` cells as a bar.
fn bar(share: f64, width: usize) -> String {
    let filled = ((share.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(filled), "·".repeat(width - filled))
}

fn draw(f: &mut Frame, screen: &Screen) {
    let [header, rates, middle, bottom, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(5),
        Constraint::Min(6),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let Some(view) = &screen.view else {
        let text = screen.error.as_deref().unwrap_or("looking at the cluster…");
        f.render_widget(Paragraph::new(text), header);
        return;
    };
    draw_header(f, header, view);
    draw_rates(f, rates, screen);
    let [roles, frameworks] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(middle);
    draw_roles(f, roles, view);
    draw_frameworks(f, frameworks, view);
    draw_agents(f, bottom, view);
    let status = match &screen.error {
        Some(e) => Span::styled(format!("error: {e}"), Style::new().fg(Color::Red)),
        None => Span::raw("q to quit"),
    };
    f.render_widget(Paragraph::new(Line::from(status)), footer);
}

fn draw_header(f: &mut Frame, area: Rect, view: &View) {
    let s = &view.summary;
    let count = |state: TaskState| {
        s.tasks
            .iter()
            .find(|(st, _)| *st == state)
            .map_or(0, |(_, n)| *n)
    };
    let live: usize = s.tasks.iter().map(|(_, n)| n).sum();
    let used_cpus = cpus(&s.total) - cpus(&s.free);
    let used_mem = s.total.mem_mib().saturating_sub(s.free.mem_mib());
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let line = Line::from(vec![
        Span::styled("stoa ", bold),
        Span::raw(format!(
            "agents {}/{}  frameworks {}  tasks running {}  live {}  offers {}  cpus {:.1}/{:.1}  mem {}/{} MiB",
            s.connected_agents,
            s.agents,
            s.frameworks,
            count(TaskState::Running),
            live,
            s.offers,
            used_cpus,
            cpus(&s.total),
            used_mem,
            s.total.mem_mib(),
        )),
    ]);
    f.render_widget(Paragraph::new(line), area);
}

fn draw_rates(f: &mut Frame, area: Rect, screen: &Screen) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    for (area, name, data, color) in [
        (left, "launched", &screen.launched, Color::Blue),
        (right, "ended", &screen.ended, Color::Green),
    ] {
        let now = data.back().copied().unwrap_or(0);
        // The newest samples, as many as fit.
        let width = usize::from(area.width.saturating_sub(2));
        let shown: Vec<u64> = data
            .iter()
            .copied()
            .skip(data.len().saturating_sub(width))
            .collect();
        let spark = Sparkline::default()
            .block(Block::bordered().title(format!(" tasks {name} per second: {now} ")))
            .data(&shown)
            .style(Style::new().fg(color));
        f.render_widget(spark, area);
    }
}

fn draw_roles(f: &mut Frame, area: Rect, view: &View) {
    let block = Block::bordered().title(" allocation by role (cpus) ");
    let Some(roles) = &view.roles else {
        f.render_widget(
            Paragraph::new("roles are the operator's to see").block(block),
            area,
        );
        return;
    };
    let total = cpus(&view.summary.total).max(1e-9);
    let rows = roles.iter().map(|r| {
        let held = amount(&r.allocated, "cpus") as f64 / 1000.0;
        Row::new(vec![
            Cell::from(r.role.to_string()),
            Cell::from(format!("{:.2}", r.weight)),
            Cell::from(format!("{held:.2}")),
            Cell::from(bar(held / total, 16)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(10),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(16),
        ],
    )
    .header(
        Row::new(["role", "weight", "cpus", "share"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(block);
    f.render_widget(table, area);
}

fn draw_frameworks(f: &mut Frame, area: Rect, view: &View) {
    let total = cpus(&view.summary.total).max(1e-9);
    let rows = view.frameworks.iter().map(|fw| {
        let held = amount(&fw.allocated, "cpus") as f64 / 1000.0;
        Row::new(vec![
            Cell::from(fw.name.clone()),
            Cell::from(fw.role.to_string()),
            Cell::from(fw.tasks.to_string()),
            Cell::from(format!("{held:.2}")),
            Cell::from(amount(&fw.allocated, "mem").to_string()),
            Cell::from(bar(held / total, 12)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(12),
        ],
    )
    .header(
        Row::new(["framework", "role", "tasks", "cpus", "mem MiB", "share"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(" allocation by framework "));
    f.render_widget(table, area);
}

fn draw_agents(f: &mut Frame, area: Rect, view: &View) {
    let block = Block::bordered().title(" agents ");
    let Some(agents) = &view.agents else {
        f.render_widget(
            Paragraph::new("agents are the operator's to see").block(block),
            area,
        );
        return;
    };
    let rows = agents.iter().map(|a| {
        let (total, free) = (cpus(&a.total), cpus(&a.free));
        let state = if a.connected {
            "connected"
        } else if a.unreachable {
            "unreachable"
        } else {
            "gone"
        };
        Row::new(vec![
            Cell::from(a.id.to_string()),
            Cell::from(a.hostname.clone()),
            Cell::from(state),
            Cell::from(a.tasks.to_string()),
            Cell::from(format!("{:.2}/{:.2}", total - free, total)),
            Cell::from(format!(
                "{}/{}",
                a.total.mem_mib().saturating_sub(a.free.mem_mib()),
                a.total.mem_mib()
            )),
            Cell::from(bar((total - free) / total.max(1e-9), 12)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(16),
            Constraint::Length(14),
            Constraint::Length(11),
            Constraint::Length(6),
            Constraint::Length(12),
            Constraint::Length(13),
            Constraint::Length(12),
        ],
    )
    .header(
        Row::new([
            "agent",
            "host",
            "state",
            "tasks",
            "cpus used",
            "mem MiB",
            "cpu use",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(block);
    f.render_widget(table, area);
}
