//! From a scenario and its options to a plan: which publishers publish to
//! which topic, which subscribers subscribe to which filter, and how many
//! deliveries each published message should have.

use tern_codec::topic::{filter_matches, is_valid_topic_filter, is_valid_topic_name};

use crate::bench::cli::{BenchArgs, Scenario};

/// One publishing connection.
#[derive(Debug, Clone)]
pub struct PublisherSpec {
    /// Its index (`%i`), also the publisher id in every payload.
    pub index: u32,
    pub topic: String,
    /// Deliveries each of its messages should have: the number of
    /// subscribers whose filter matches its topic (one for a shared group).
    /// `None` when the subscribers are not in this process.
    pub deliveries: Option<u64>,
}

/// One subscribing connection.
#[derive(Debug, Clone)]
pub struct SubscriberSpec {
    pub index: u32,
    pub filter: String,
}

/// Everything a run opens.
#[derive(Debug)]
pub struct Plan {
    pub publishers: Vec<PublisherSpec>,
    pub subscribers: Vec<SubscriberSpec>,
    /// Idle connections (conn scenario).
    pub idle: usize,
}

impl Plan {
    pub fn connections(&self) -> usize {
        self.publishers.len() + self.subscribers.len() + self.idle
    }

    /// Whether sent messages can be matched against received ones.
    pub fn knows_expected(&self) -> bool {
        !self.publishers.is_empty() && !self.subscribers.is_empty()
    }
}

/// Replaces every `%i` in `pattern` by `index`.
pub fn expand(pattern: &str, index: u32) -> String {
    pattern.replace("%i", &index.to_string())
}

/// The filter matching every topic of a pattern: the levels before the
/// first one holding `%i`, then `#`; the topic itself if it has no `%i`.
pub fn covering_filter(pattern: &str) -> String {
    if !pattern.contains("%i") {
        return pattern.to_string();
    }
    let mut levels: Vec<&str> = pattern
        .split('/')
        .take_while(|level| !level.contains("%i"))
        .collect();
    levels.push("#");
    levels.join("/")
}

/// The filter inside `$share/GROUP/FILTER`, or the filter itself.
fn inner_filter(filter: &str) -> (&str, bool) {
    match filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((_, inner)) => (inner, true),
        None => (filter, false),
    }
}

/// Builds the plan and checks topics and filters.
pub fn plan(args: &BenchArgs) -> Result<Plan, String> {
    let first = u32::try_from(args.first_index).map_err(|_| "--first-index is too large")?;
    // Indexes first..first + n must fit in a u32.
    let count = |n: usize| -> Result<u32, String> {
        u32::try_from(n)
            .ok()
            .filter(|n| n.checked_add(first).is_some())
            .ok_or_else(|| "too many connections".to_string())
    };
    let default_filter = args
        .filter
        .clone()
        .unwrap_or_else(|| covering_filter(&args.topic));
    let (publishers, subscribers, idle) = match args.scenario {
        Scenario::Conn => (0, 0, args.connections.unwrap_or(1000)),
        Scenario::Pub => (args.publishers.unwrap_or(1), 0, 0),
        Scenario::Sub => (0, args.subscribers.unwrap_or(1), 0),
        Scenario::Fanin => (
            args.publishers.unwrap_or(8),
            args.subscribers.unwrap_or(1),
            0,
        ),
        Scenario::Fanout => (
            args.publishers.unwrap_or(1),
            args.subscribers.unwrap_or(64),
            0,
        ),
        Scenario::P2p => {
            let n = args.pairs.unwrap_or(64);
            (n, n, 0)
        }
        Scenario::Shared => (
            args.publishers.unwrap_or(8),
            args.subscribers.unwrap_or(4),
            0,
        ),
    };
    let (publishers, subscribers) = (count(publishers)?, count(subscribers)?);
    let mut plan = Plan {
        publishers: (first..first + publishers)
            .map(|index| PublisherSpec {
                index,
                topic: expand(&args.topic, index),
                deliveries: None,
            })
            .collect(),
        subscribers: (first..first + subscribers)
            .map(|index| SubscriberSpec {
                index,
                filter: match args.scenario {
                    Scenario::P2p => expand(&args.topic, index),
                    Scenario::Shared => {
                        format!("$share/{}/{}", args.group, expand(&default_filter, index))
                    }
                    _ => expand(&default_filter, index),
                },
            })
            .collect(),
        idle,
    };
    for p in &plan.publishers {
        if !is_valid_topic_name(&p.topic) {
            return Err(format!("'{}' is not a valid topic name", p.topic));
        }
    }
    for s in &plan.subscribers {
        let (inner, shared) = inner_filter(&s.filter);
        if !is_valid_topic_filter(inner) || (shared && args.group.contains(['+', '#', '/'])) {
            return Err(format!("'{}' is not a valid topic filter", s.filter));
        }
    }
    if plan.knows_expected() {
        count_deliveries(&mut plan, args.scenario)?;
    }
    Ok(plan)
}

/// Sets each publisher's expected deliveries from the filters matching its
/// topic (one per shared group, one per pair in p2p).
fn count_deliveries(plan: &mut Plan, scenario: Scenario) -> Result<(), String> {
    for (i, p) in plan.publishers.iter_mut().enumerate() {
        let deliveries = match scenario {
            Scenario::P2p => 1,
            _ => {
                let mut plain = 0;
                let mut groups = std::collections::HashSet::new();
                for s in &plan.subscribers {
                    let (inner, shared) = inner_filter(&s.filter);
                    if filter_matches(inner, &p.topic) {
                        if shared {
                            groups.insert(s.filter.as_str());
                        } else {
                            plain += 1;
                        }
                    }
                }
                plain + groups.len() as u64
            }
        };
        if deliveries == 0 {
            return Err(format!(
                "publisher {i}'s topic '{}' matches no subscriber's filter",
                p.topic
            ));
        }
        p.deliveries = Some(deliveries);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan_of(line: &str) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(line.split_whitespace()))
            .map_err(|e| e.to_string())?;
        cli.args.validate()?;
        plan(&cli.args)
    }

    #[test]
    fn covering_filters() {
        assert_eq!(covering_filter("bench/%i"), "bench/#");
        assert_eq!(covering_filter("a/dev%i/temp"), "a/#");
        assert_eq!(covering_filter("%i"), "#");
        assert_eq!(covering_filter("fixed/topic"), "fixed/topic");
    }

    #[test]
    fn scenarios_and_their_deliveries() {
        let p = plan_of("fanout -S 4").unwrap();
        assert_eq!(p.publishers.len(), 1);
        assert_eq!(p.publishers[0].topic, "bench/0");
        assert_eq!(p.publishers[0].deliveries, Some(4));
        assert!(p.subscribers.iter().all(|s| s.filter == "bench/#"));

        let p = plan_of("fanin -P 4 -S 2").unwrap();
        assert!(p.publishers.iter().all(|p| p.deliveries == Some(2)));

        let p = plan_of("p2p -n 3 -t pair/%i/x --first-index 5").unwrap();
        assert_eq!(p.subscribers[2].filter, "pair/7/x");
        assert_eq!(p.publishers[2].topic, "pair/7/x");
        assert_eq!(p.publishers[0].deliveries, Some(1));

        let p = plan_of("shared -P 2 -S 3").unwrap();
        assert_eq!(p.subscribers[0].filter, "$share/bench/bench/#");
        assert_eq!(p.publishers[1].deliveries, Some(1));

        let p = plan_of("sub -S 2").unwrap();
        assert!(!p.knows_expected());
        assert_eq!(plan_of("conn -c 5").unwrap().connections(), 5);
    }

    #[test]
    fn mistakes_are_refused() {
        assert!(
            plan_of("fanin -f other/#")
                .unwrap_err()
                .contains("matches no")
        );
        assert!(plan_of("fanout -t a/+").unwrap_err().contains("topic name"));
        assert!(plan_of("p2p -P 3").unwrap_err().contains("does not apply"));
        assert!(plan_of("pub --inflight 10").is_err());
        assert!(plan_of("fanout -s 8").unwrap_err().contains("--size"));
        assert!(plan_of("fanout -S 0").is_err());
    }
}
