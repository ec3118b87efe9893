//! Schedules: time-sharing a function between hosts by the UTC clock (issue 14, "Rules"), as
//! backup windows need — "to host A 01:00–03:00 UTC daily, then to host B". A sans-I/O engine
//! like [`crate::mgmt::rules`]: it holds the schedules and, given the wall-clock time, says
//! where each scheduled function belongs ([`Schedules::desired`]); the Redfish service moves it
//! there with the same orderly hand-over as a manual move.
//!
//! A schedule says where its function is at every moment: inside its daily window with `host`,
//! outside with `then` (another host, or `None`: in the pool). A function may have several
//! schedules whose windows do not overlap; outside all of them it is where the window that
//! ended last sends it. What conflicts (docs/api.md "Schedules"):
//!
//! * two schedules of one function whose windows share a minute ([`Schedules::check`]);
//! * a schedule and a manual assignment: a function assigned by hand cannot get a schedule
//!   (unassign it first), and a function that has a schedule cannot be assigned or unassigned
//!   by hand (remove its schedules first) — the service enforces both.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Minutes in a day.
pub const DAY: u16 = 24 * 60;

/// Most schedules kept (every one is looked at each second).
pub const MAX_SCHEDULES: usize = 256;

/// A daily window in UTC, `[start, end)` in minutes of the day; `end < start` wraps midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First minute.
    pub start: u16,
    /// First minute after it.
    pub end: u16,
}

/// Parse `HH:MM` (00:00 to 23:59) into a minute of the day.
pub fn parse_minute(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// `HH:MM` of a minute of the day.
pub fn format_minute(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

impl Window {
    /// A window from `start` to `end` (minutes of the day, both below [`DAY`], different).
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start < DAY && end < DAY && start != end).then_some(Window { start, end })
    }

    /// Whether minute `m` of the day is inside.
    pub fn contains(&self, m: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// Whether the two windows share a minute.
    pub fn overlaps(&self, other: &Window) -> bool {
        self.contains(other.start) || other.contains(self.start)
    }

    /// `HH:MM–HH:MM UTC`, for people.
    pub fn describe(&self) -> String {
        format!(
            "{}–{} UTC",
            format_minute(self.start),
            format_minute(self.end)
        )
    }
}

/// The minute of the day (UTC) of `t`.
pub fn minute_of_day(t: SystemTime) -> u16 {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((secs % 86_400) / 60) as u16
}

/// One schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Stable id (never reused).
    pub id: u64,
    /// The function it moves.
    pub function: String,
    /// Where the function is during the window.
    pub host: String,
    /// The daily window.
    pub window: Window,
    /// Where it is after the window (`None`: in the pool).
    pub then: Option<String>,
}

impl Schedule {
    /// "to alpha 01:00–03:00 UTC, then to beta", for people.
    pub fn describe(&self) -> String {
        format!(
            "schedule {}: {} to {} {}, then {}",
            self.id,
            self.function,
            self.host,
            self.window.describe(),
            match &self.then {
                Some(h) => format!("to {h}"),
                None => "to the pool".into(),
            }
        )
    }
}

/// Why a schedule cannot be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Its window shares time with another schedule of the function.
    Overlaps(Schedule),
    /// `then` is the window's own host.
    ThenIsHost,
    /// [`MAX_SCHEDULES`] exist.
    TooMany,
}

/// Where a scheduled function belongs now, and by which schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The owner it should have (`None`: none).
    pub owner: Option<String>,
    /// The schedule that says so.
    pub by: Schedule,
    /// Whether that schedule's window is open.
    pub in_window: bool,
}

/// Every schedule, by id.
#[derive(Debug, Clone, Default)]
pub struct Schedules {
    by_id: BTreeMap<u64, Schedule>,
}

impl Schedules {
    /// None.
    pub fn new() -> Self {
        Schedules::default()
    }

    /// Whether `s` may be added (its id is not looked at).
    pub fn check(&self, s: &Schedule) -> Result<(), Conflict> {
        if s.then.as_deref() == Some(s.host.as_str()) {
            return Err(Conflict::ThenIsHost);
        }
        if self.by_id.len() >= MAX_SCHEDULES {
            return Err(Conflict::TooMany);
        }
        match self
            .of_function(&s.function)
            .find(|o| o.window.overlaps(&s.window))
        {
            Some(o) => Err(Conflict::Overlaps(o.clone())),
            None => Ok(()),
        }
    }

    /// Add `s` (after [`Schedules::check`]; a schedule with the same id is replaced).
    pub fn insert(&mut self, s: Schedule) {
        self.by_id.insert(s.id, s);
    }

    /// Remove schedule `id`; it, if it existed.
    pub fn remove(&mut self, id: u64) -> Option<Schedule> {
        self.by_id.remove(&id)
    }

    /// Schedule `id`.
    pub fn get(&self, id: u64) -> Option<&Schedule> {
        self.by_id.get(&id)
    }

    /// Every schedule, by id.
    pub fn all(&self) -> impl Iterator<Item = &Schedule> + '_ {
        self.by_id.values()
    }

    /// The schedules of `function`.
    pub fn of_function<'a>(&'a self, function: &'a str) -> impl Iterator<Item = &'a Schedule> {
        self.by_id.values().filter(move |s| s.function == function)
    }

    /// Where `function` belongs at `now` (`None`: it has no schedule).
    pub fn desired(&self, function: &str, now: SystemTime) -> Option<Desired> {
        let m = minute_of_day(now);
        let mut last_ended: Option<(u16, &Schedule)> = None;
        for s in self.of_function(function) {
            if s.window.contains(m) {
                return Some(Desired {
                    owner: Some(s.host.clone()),
                    by: s.clone(),
                    in_window: true,
                });
            }
            // Minutes since this window ended (0 to a day).
            let since = (m + DAY - s.window.end) % DAY;
            if last_ended.is_none_or(|(b, _)| since < b) {
                last_ended = Some((since, s));
            }
        }
        last_ended.map(|(_, s)| Desired {
            owner: s.then.clone(),
            by: s.clone(),
            in_window: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(h: u64, m: u64) -> SystemTime {
        // 2026-12-04 is day 20426 since the epoch.
        UNIX_EPOCH + Duration::from_secs(20_426 * 86_400 + h * 3600 + m * 60)
    }

    fn sched(id: u64, host: &str, start: &str, end: &str, then: Option<&str>) -> Schedule {
        Schedule {
            id,
            function: "nvme0".into(),
            host: host.into(),
            window: Window::new(parse_minute(start).unwrap(), parse_minute(end).unwrap()).unwrap(),
            then: then.map(str::to_string),
        }
    }

    #[test]
    fn minutes_parse_strictly() {
        assert_eq!(parse_minute("00:00"), Some(0));
        assert_eq!(parse_minute("01:30"), Some(90));
        assert_eq!(parse_minute("23:59"), Some(1439));
        for bad in [
            "24:00", "1:30", "01:60", "0130", "01:3", "+1:30", "01:30 ", "", "ab:cd",
        ] {
            assert_eq!(parse_minute(bad), None, "{bad:?}");
        }
        assert_eq!(format_minute(90), "01:30");
        assert_eq!(Window::new(60, 60), None);
        assert_eq!(Window::new(60, DAY), None);
    }

    #[test]
    fn windows_contain_and_overlap_across_midnight() {
        let night = Window::new(23 * 60, 60).unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(59));
        assert!(!night.contains(60) && !night.contains(22 * 60 + 59));
        let backup = Window::new(60, 3 * 60).unwrap();
        assert!(!night.overlaps(&backup), "end is exclusive");
        assert!(!backup.overlaps(&night));
        let late = Window::new(2 * 60 + 59, 4 * 60).unwrap();
        assert!(backup.overlaps(&late) && late.overlaps(&backup));
        let inside = Window::new(90, 100).unwrap();
        assert!(backup.overlaps(&inside) && inside.overlaps(&backup));
        assert_eq!(backup.describe(), "01:00–03:00 UTC");
    }

    #[test]
    fn a_function_is_with_the_window_host_inside_and_then_after() {
        let mut s = Schedules::new();
        s.insert(sched(1, "alpha", "01:00", "03:00", Some("beta")));
        assert_eq!(s.desired("other", at(2, 0)), None);
        let d = s.desired("nvme0", at(1, 0)).unwrap();
        assert_eq!((d.owner.as_deref(), d.in_window), (Some("alpha"), true));
        let d = s.desired("nvme0", at(2, 59)).unwrap();
        assert_eq!(d.owner.as_deref(), Some("alpha"));
        let d = s.desired("nvme0", at(3, 0)).unwrap();
        assert_eq!((d.owner.as_deref(), d.in_window), (Some("beta"), false));
        let d = s.desired("nvme0", at(0, 59)).unwrap();
        assert_eq!(d.owner.as_deref(), Some("beta"));
    }

    #[test]
    fn outside_every_window_the_last_one_ended_decides() {
        let mut s = Schedules::new();
        s.insert(sched(1, "alpha", "01:00", "03:00", Some("beta")));
        s.insert(sched(2, "gamma", "12:00", "13:00", None));
        assert_eq!(
            s.desired("nvme0", at(12, 30)).unwrap().owner.as_deref(),
            Some("gamma")
        );
        let d = s.desired("nvme0", at(14, 0)).unwrap();
        assert_eq!((d.owner, d.by.id), (None, 2));
        let d = s.desired("nvme0", at(5, 0)).unwrap();
        assert_eq!((d.owner.as_deref(), d.by.id), (Some("beta"), 1));
        let d = s.desired("nvme0", at(0, 30)).unwrap();
        assert_eq!(
            (d.owner, d.by.id),
            (None, 2),
            "yesterday's 13:00 ended last"
        );
    }

    #[test]
    fn conflicts() {
        let mut s = Schedules::new();
        let first = sched(1, "alpha", "01:00", "03:00", Some("beta"));
        s.insert(first.clone());
        assert_eq!(
            s.check(&sched(2, "gamma", "02:00", "04:00", None)),
            Err(Conflict::Overlaps(first.clone()))
        );
        assert_eq!(
            s.check(&sched(2, "gamma", "00:00", "01:00", None)),
            Ok(()),
            "back to back is no overlap"
        );
        assert_eq!(
            s.check(&sched(2, "gamma", "04:00", "05:00", Some("gamma"))),
            Err(Conflict::ThenIsHost)
        );
        let mut other = sched(2, "gamma", "02:00", "04:00", None);
        other.function = "dma0".into();
        assert_eq!(
            s.check(&other),
            Ok(()),
            "another function's schedules do not count"
        );
        assert_eq!(s.remove(1), Some(first));
        assert_eq!(s.check(&sched(2, "gamma", "02:00", "04:00", None)), Ok(()));
        for i in 0..MAX_SCHEDULES as u64 {
            let mut x = sched(10 + i, "alpha", "01:00", "02:00", None);
            x.function = format!("f{i}");
            s.insert(x);
        }
        assert_eq!(
            s.check(&sched(9999, "gamma", "05:00", "06:00", None)),
            Err(Conflict::TooMany)
        );
    }
}
