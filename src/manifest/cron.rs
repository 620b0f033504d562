//! A job's `schedule:`: cron syntax, evaluated in the host's time zone.
//!
//! Five fields (minute hour day-of-month month day-of-week) as in crontab,
//! or six with seconds first. The host's zone, not UTC, because that is
//! what a person writing `0 3 * * *` on a server means, as with cron
//! itself; status says which zone it is. Parsing is `croner`'s, time zones
//! are `jiff`'s (it reads the system zone and its daylight-saving rules).

use std::fmt;
use std::time::SystemTime;

use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
}

impl Schedule {
    /// Parse a 5- or 6-field cron expression.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!("it has {fields} fields"));
        }
        CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(text)
            .map(|cron| Schedule { cron })
            .map_err(|e| e.to_string())
    }

    /// The first run strictly after `after`, in `zone`. `None` when the
    /// schedule never fires again (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: SystemTime, zone: &jiff::tz::TimeZone) -> Option<SystemTime> {
        let at = jiff::Timestamp::try_from(after)
            .ok()?
            .to_zoned(zone.clone());
        let next = self.cron.find_next_occurrence(&at, false).ok()?;
        Some(SystemTime::from(next.timestamp()))
    }
}

/// The time zone schedules are evaluated in: the host's (`TZ`, then
/// `/etc/localtime`), UTC when neither says.
pub fn host_zone() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::system()
}

/// A zone's name for people: `Europe/Berlin`, or `UTC`.
pub fn zone_name(zone: &jiff::tz::TimeZone) -> String {
    zone.iana_name().unwrap_or("UTC").to_string()
}

/// `12:15` (or `Mon 12:15` beyond today) in `zone`: how status and plan
/// show the next run.
pub fn local_time(at: SystemTime, now: SystemTime, zone: &jiff::tz::TimeZone) -> String {
    let (Ok(at), Ok(now)) = (
        jiff::Timestamp::try_from(at),
        jiff::Timestamp::try_from(now),
    ) else {
        return "?".into();
    };
    let at = at.to_zoned(zone.clone());
    let now = now.to_zoned(zone.clone());
    if at.date() == now.date() {
        at.strftime("%H:%M:%S").to_string()
    } else {
        at.strftime("%a %Y-%m-%d %H:%M").to_string()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cron.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn utc() -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::UTC
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn five_and_six_field_schedules_parse_and_others_are_refused() {
        assert!(Schedule::parse("*/15 * * * *").is_ok());
        assert!(Schedule::parse("*/10 * * * * *").is_ok());
        assert!(Schedule::parse("* * * *").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("@often").is_err());
    }

    #[test]
    fn the_next_run_is_strictly_after_the_given_time() {
        let every_minute = Schedule::parse("* * * * *").unwrap();
        // 1970-01-01 00:01:00 is a slot: the next one is a minute later.
        assert_eq!(every_minute.next_after(at(60), &utc()), Some(at(120)));
        assert_eq!(every_minute.next_after(at(61), &utc()), Some(at(120)));
        let seconds = Schedule::parse("*/20 * * * * *").unwrap();
        assert_eq!(seconds.next_after(at(61), &utc()), Some(at(80)));
    }

    #[test]
    fn schedules_follow_the_zone_they_are_evaluated_in() {
        let three_am = Schedule::parse("0 3 * * *").unwrap();
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        // 1970-01-01 03:00 in Berlin (UTC+1) is 02:00 UTC.
        assert_eq!(three_am.next_after(at(0), &berlin), Some(at(2 * 3600)));
        assert_eq!(three_am.next_after(at(0), &utc()), Some(at(3 * 3600)));
        assert_eq!(zone_name(&berlin), "Europe/Berlin");
    }
}
