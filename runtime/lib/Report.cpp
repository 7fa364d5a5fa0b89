//===- Report.cpp - A training run's metrics as charts --------------------===//
//
// Hand-written SVG: each chart is a plot area with "nice" ticks (1, 2, 2.5, 5
// times a power of ten), light grid lines, labelled axes and one or two
// lines. Very small or large values share a power of ten shown in the axis
// label (×10⁻⁵) or an SI suffix (12k), so tick labels stay short.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/Report.h"

#include "IOUtil.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>

using namespace llamac;
using namespace llamac::io;
using json = nlohmann::json;

static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

Result<std::vector<MetricsRow>>
llamac::readMetricsFile(const std::string &path) {
  return guard(path, [&]() -> Result<std::vector<MetricsRow>> {
    if (Result<InputFile> file = InputFile::open(path); !file)
      return file.error();
    std::ifstream in(path);
    std::map<int64_t, MetricsRow> bySteps;
    std::string line;
    auto number = [](const json &object, const char *key) {
      auto it = object.find(key);
      return it != object.end() && it->is_number() ? it->get<double>() : kNaN;
    };
    for (int64_t lineNumber = 1; std::getline(in, line); ++lineNumber) {
      if (line.find_first_not_of(" \t\r\n") == std::string::npos)
        continue;
      const std::string where = path + ":" + std::to_string(lineNumber);
      json object = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!object.is_object())
        return Error{where + ": not a JSON object"};
      auto step = object.find("step");
      if (step == object.end() || !step->is_number_integer())
        return Error{where + ": no integer \"step\""};
      MetricsRow row;
      row.step = step->get<int64_t>();
      row.loss = number(object, "loss");
      row.lr = number(object, "lr");
      row.gradNorm = number(object, "grad_norm");
      row.tokens = number(object, "tokens");
      row.stepTimeS = number(object, "step_time_s");
      row.tokensPerS = number(object, "tokens_per_s");
      if (std::isnan(row.tokensPerS) && row.stepTimeS > 0)
        row.tokensPerS = row.tokens / row.stepTimeS;
      bySteps[row.step] = row;
    }
    if (bySteps.empty())
      return fail(path, "no steps (the file is empty or only blank lines)");
    std::vector<MetricsRow> rows;
    for (auto &[step, row] : bySteps)
      rows.push_back(row);
    return rows;
  });
}

namespace {

std::string escape(const std::string &text) {
  std::string out;
  for (char c : text) {
    switch (c) {
    case '&':
      out += "&amp;";
      break;
    case '<':
      out += "&lt;";
      break;
    case '>':
      out += "&gt;";
      break;
    case '"':
      out += "&quot;";
      break;
    default:
      out += c;
    }
  }
  return out;
}

constexpr const char *kFont =
    "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, "
    "sans-serif";

/// A number in SVG coordinates.
std::string px(double value) { return format("%.1f", value); }

/// 1, 2, 2.5 or 5 times a power of ten, at least \p raw.
double niceStep(double raw) {
  double exponent = std::floor(std::log10(raw));
  double base = std::pow(10.0, exponent);
  double fraction = raw / base;
  double nice = fraction <= 1     ? 1
                : fraction <= 2   ? 2
                : fraction <= 2.5 ? 2.5
                : fraction <= 5   ? 5
                                  : 10;
  return nice * base;
}

std::string superscript(int value) {
  static const char *digits[] = {"⁰", "¹", "²", "³", "⁴",
                                 "⁵", "⁶", "⁷", "⁸", "⁹"};
  std::string text = value < 0 ? "⁻" : "";
  std::string plain = std::to_string(std::abs(value));
  for (char c : plain)
    text += digits[c - '0'];
  return text;
}

/// An axis: its range, ticks and how to label them.
struct Axis {
  double lo = 0, hi = 1, step = 1;
  std::vector<double> ticks;
  /// Tick labels show value * scale; `unit` is appended to the axis title.
  double scale = 1;
  std::string suffix, unit;
  int decimals = 0;

  double fraction(double value) const { return (value - lo) / (hi - lo); }

  std::string label(double value) const {
    if (std::fabs(value) < step * 1e-6)
      return "0";
    return format("%.*f", decimals, value * scale) + suffix;
  }
};

Axis makeAxis(double lo, double hi, int target, bool integer,
              bool includeZero) {
  if (includeZero) {
    lo = std::min(lo, 0.0);
    hi = std::max(hi, 0.0);
  }
  if (!(hi > lo)) {
    double pad = lo == 0 ? 1 : std::fabs(lo) * 0.1;
    lo -= pad;
    hi += pad;
    if (includeZero && lo < 0 && hi > 0 && lo + pad >= 0)
      lo = 0;
  }
  Axis axis;
  axis.step = niceStep((hi - lo) / target);
  if (integer)
    axis.step = std::max(1.0, std::round(axis.step));
  axis.lo = std::floor(lo / axis.step + 1e-9) * axis.step;
  axis.hi = std::ceil(hi / axis.step - 1e-9) * axis.step;
  if (integer) {
    // Steps start where the data starts: no tick left of step 1.
    axis.lo = std::max(axis.lo, std::floor(lo));
    axis.hi = std::max(axis.hi, axis.lo + 1);
  }
  int count = int(std::llround((axis.hi - axis.lo) / axis.step));
  double first = std::ceil(axis.lo / axis.step - 1e-9) * axis.step;
  for (int i = 0; i <= count; ++i) {
    double tick = first + i * axis.step;
    if (tick <= axis.hi + axis.step * 1e-9)
      axis.ticks.push_back(tick);
  }

  double magnitude = std::max(std::fabs(axis.lo), std::fabs(axis.hi));
  if (!integer && magnitude >= 1e4) {
    static const char *suffixes[] = {"k", "M", "G", "T"};
    int group = std::min(4, int(std::floor(std::log10(magnitude) / 3)));
    axis.scale = std::pow(10.0, -3 * group);
    axis.suffix = suffixes[group - 1];
  } else if (!integer && magnitude > 0 && magnitude < 1e-2) {
    int exponent = int(std::floor(std::log10(magnitude)));
    axis.scale = std::pow(10.0, -exponent);
    axis.unit = "×10" + superscript(exponent);
  }
  double scaledStep = axis.step * axis.scale;
  axis.decimals = std::max(0, int(-std::floor(std::log10(scaledStep) + 1e-9)));
  if (std::fabs(scaledStep / std::pow(10.0, -axis.decimals) - 2.5) < 1e-6)
    ++axis.decimals;
  return axis;
}

/// One line of a chart.
struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> points; // (step, value), finite
  double width = 2, opacity = 1;
  bool dots = false, area = false;
};

struct ChartSpec {
  std::string title, yTitle, xTitle = "optimizer step";
  std::vector<Series> series;
  bool includeZero = false;
  double width = 560, height = 320;
};

/// Points of \p rows where \p value is finite.
template <typename F>
std::vector<std::pair<double, double>>
pointsOf(const std::vector<MetricsRow> &rows, F value) {
  std::vector<std::pair<double, double>> points;
  for (const MetricsRow &row : rows) {
    double y = value(row);
    if (std::isfinite(y))
      points.push_back({double(row.step), y});
  }
  return points;
}

/// A centered moving average over `radius` points each side (fewer at the
/// ends): unlike an exponential average it does not lag behind the data.
std::vector<std::pair<double, double>>
smooth(const std::vector<std::pair<double, double>> &points, size_t radius) {
  std::vector<std::pair<double, double>> out;
  for (size_t i = 0; i < points.size(); ++i) {
    size_t lo = i >= radius ? i - radius : 0;
    size_t hi = std::min(points.size() - 1, i + radius);
    // Symmetric at the ends too, so the first and last points stay put.
    size_t half = std::min(i - lo, hi - i);
    double sum = 0;
    for (size_t j = i - half; j <= i + half; ++j)
      sum += points[j].second;
    out.push_back({points[i].first, sum / double(2 * half + 1)});
  }
  return out;
}

/// The chart as an <svg> element placed at (x, y) of a parent, or standalone
/// when both are 0 and \p nested is false.
std::string renderChart(const ChartSpec &spec, double x = 0, double y = 0,
                        bool nested = false) {
  const double left = 70, right = 20, top = 44, bottom = 50;
  const double w = spec.width, h = spec.height;
  const double plotW = w - left - right, plotH = h - top - bottom;

  double xMin = INFINITY, xMax = -INFINITY, yMin = INFINITY, yMax = -INFINITY;
  for (const Series &series : spec.series)
    for (auto [px_, py] : series.points) {
      xMin = std::min(xMin, px_);
      xMax = std::max(xMax, px_);
      yMin = std::min(yMin, py);
      yMax = std::max(yMax, py);
    }
  bool empty = !std::isfinite(xMin);
  if (empty) {
    xMin = 0;
    xMax = 1;
    yMin = 0;
    yMax = 1;
  }
  Axis xAxis = makeAxis(xMin, xMax, 6, /*integer=*/true, false);
  Axis yAxis = makeAxis(yMin, yMax, 5, /*integer=*/false, spec.includeZero);
  auto sx = [&](double v) { return left + xAxis.fraction(v) * plotW; };
  auto sy = [&](double v) { return top + (1 - yAxis.fraction(v)) * plotH; };

  std::string svg;
  if (nested)
    svg += format("<svg x=\"%s\" y=\"%s\" width=\"%s\" height=\"%s\" "
                  "viewBox=\"0 0 %s %s\">\n",
                  px(x).c_str(), px(y).c_str(), px(w).c_str(), px(h).c_str(),
                  px(w).c_str(), px(h).c_str());
  else
    svg +=
        format("<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 "
               "%s %s\" role=\"img\" aria-label=\"%s\" font-family=\"%s\">\n",
               px(w).c_str(), px(h).c_str(), escape(spec.title).c_str(), kFont);
  svg += format("<rect x=\"0.5\" y=\"0.5\" width=\"%s\" height=\"%s\" "
                "rx=\"10\" fill=\"#ffffff\" stroke=\"#e2e8f0\"/>\n",
                px(w - 1).c_str(), px(h - 1).c_str());
  svg += format("<text x=\"18\" y=\"27\" font-size=\"16\" font-weight=\"600\" "
                "fill=\"#0f172a\">%s</text>\n",
                escape(spec.title).c_str());

  // Grid and tick labels.
  svg += "<g stroke=\"#e5e7eb\" stroke-width=\"1\">\n";
  for (double tick : yAxis.ticks)
    svg += format("<line x1=\"%s\" y1=\"%s\" x2=\"%s\" y2=\"%s\"/>\n",
                  px(left).c_str(), px(sy(tick)).c_str(),
                  px(left + plotW).c_str(), px(sy(tick)).c_str());
  for (double tick : xAxis.ticks)
    svg += format("<line x1=\"%s\" y1=\"%s\" x2=\"%s\" y2=\"%s\"/>\n",
                  px(sx(tick)).c_str(), px(top).c_str(), px(sx(tick)).c_str(),
                  px(top + plotH).c_str());
  svg += "</g>\n";
  svg +=
      format("<g stroke=\"#94a3b8\" stroke-width=\"1\"><line x1=\"%s\" "
             "y1=\"%s\" x2=\"%s\" y2=\"%s\"/><line x1=\"%s\" y1=\"%s\" "
             "x2=\"%s\" y2=\"%s\"/></g>\n",
             px(left).c_str(), px(top).c_str(), px(left).c_str(),
             px(top + plotH).c_str(), px(left).c_str(), px(top + plotH).c_str(),
             px(left + plotW).c_str(), px(top + plotH).c_str());
  svg += "<g font-size=\"12\" fill=\"#475569\">\n";
  for (double tick : yAxis.ticks)
    svg += format("<text x=\"%s\" y=\"%s\" text-anchor=\"end\" "
                  "dominant-baseline=\"middle\">%s</text>\n",
                  px(left - 8).c_str(), px(sy(tick)).c_str(),
                  yAxis.label(tick).c_str());
  for (double tick : xAxis.ticks)
    svg += format("<text x=\"%s\" y=\"%s\" text-anchor=\"middle\">%s</text>\n",
                  px(sx(tick)).c_str(), px(top + plotH + 18).c_str(),
                  xAxis.label(tick).c_str());
  svg += "</g>\n";
  std::string yTitle = spec.yTitle;
  if (!yAxis.unit.empty())
    yTitle += " (" + yAxis.unit + ")";
  svg += format("<text x=\"%s\" y=\"%s\" font-size=\"13\" fill=\"#334155\" "
                "text-anchor=\"middle\">%s</text>\n",
                px(left + plotW / 2).c_str(), px(h - 12).c_str(),
                escape(spec.xTitle).c_str());
  svg += format("<text transform=\"translate(18 %s) rotate(-90)\" "
                "font-size=\"13\" fill=\"#334155\" "
                "text-anchor=\"middle\">%s</text>\n",
                px(top + plotH / 2).c_str(), escape(yTitle).c_str());

  if (empty)
    svg += format("<text x=\"%s\" y=\"%s\" font-size=\"13\" fill=\"#94a3b8\" "
                  "text-anchor=\"middle\">no data</text>\n",
                  px(left + plotW / 2).c_str(), px(top + plotH / 2).c_str());

  // Lines, areas under them, and dots with tooltips.
  for (const Series &series : spec.series) {
    if (series.points.empty())
      continue;
    std::string path;
    for (size_t i = 0; i < series.points.size(); ++i)
      path += (i ? " L" : "M") + px(sx(series.points[i].first)) + " " +
              px(sy(series.points[i].second));
    if (series.area) {
      double base = sy(std::max(yAxis.lo, 0.0));
      svg +=
          format("<path d=\"%s L%s %s L%s %s Z\" fill=\"%s\" "
                 "fill-opacity=\"0.10\" stroke=\"none\"/>\n",
                 path.c_str(), px(sx(series.points.back().first)).c_str(),
                 px(base).c_str(), px(sx(series.points.front().first)).c_str(),
                 px(base).c_str(), series.color.c_str());
    }
    svg += format("<path d=\"%s\" fill=\"none\" stroke=\"%s\" "
                  "stroke-width=\"%s\" stroke-opacity=\"%s\" "
                  "stroke-linejoin=\"round\" stroke-linecap=\"round\"/>\n",
                  path.c_str(), series.color.c_str(), px(series.width).c_str(),
                  px(series.opacity).c_str());
    if (series.dots || series.points.size() == 1) {
      svg += format("<g fill=\"%s\">\n", series.color.c_str());
      for (auto [step, value] : series.points)
        svg += format("<circle cx=\"%s\" cy=\"%s\" r=\"3\"><title>step "
                      "%.0f: %s %.6g</title></circle>\n",
                      px(sx(step)).c_str(), px(sy(value)).c_str(), step,
                      escape(series.name).c_str(), value);
      svg += "</g>\n";
    }
  }

  // Legend, top right, when there are several lines.
  if (spec.series.size() > 1) {
    double lx = left + plotW;
    for (auto it = spec.series.rbegin(); it != spec.series.rend(); ++it) {
      double textWidth = 7.0 * double(it->name.size());
      lx -= textWidth + 30;
      svg += format("<line x1=\"%s\" y1=\"22\" x2=\"%s\" y2=\"22\" "
                    "stroke=\"%s\" stroke-width=\"%s\" stroke-opacity=\"%s\" "
                    "stroke-linecap=\"round\"/>\n",
                    px(lx).c_str(), px(lx + 18).c_str(), it->color.c_str(),
                    px(std::max(it->width, 2.0)).c_str(),
                    px(std::max(it->opacity, 0.5)).c_str());
      svg += format("<text x=\"%s\" y=\"26\" font-size=\"12\" "
                    "fill=\"#475569\">%s</text>\n",
                    px(lx + 24).c_str(), escape(it->name).c_str());
    }
  }
  svg += "</svg>\n";
  return svg;
}

/// The four charts of a run.
std::vector<ChartSpec> chartsOf(const std::vector<MetricsRow> &rows) {
  std::vector<ChartSpec> charts;

  ChartSpec loss{"Training loss", "loss"};
  auto losses = pointsOf(rows, [](const MetricsRow &r) { return r.loss; });
  if (losses.size() >= 20) {
    size_t radius = std::max<size_t>(2, losses.size() / 40);
    loss.series.push_back({"loss", "#60a5fa", losses, 1.25, 0.55});
    loss.series.push_back(
        {"smoothed", "#1d4ed8", smooth(losses, radius), 2.5, 1});
  } else {
    loss.series.push_back({"loss", "#2563eb", losses, 2.25, 1, true});
  }
  charts.push_back(std::move(loss));

  ChartSpec lr{"Learning rate", "learning rate"};
  lr.includeZero = true;
  Series lrSeries{"lr", "#16a34a",
                  pointsOf(rows, [](const MetricsRow &r) { return r.lr; }),
                  2.25};
  lrSeries.area = true;
  lrSeries.dots = lrSeries.points.size() <= 30;
  lr.series.push_back(std::move(lrSeries));
  charts.push_back(std::move(lr));

  ChartSpec speed{"Throughput", "tokens / s"};
  speed.includeZero = true;
  Series speedSeries{
      "tokens/s", "#ea580c",
      pointsOf(rows, [](const MetricsRow &r) { return r.tokensPerS; }), 2.25};
  speedSeries.area = true;
  speedSeries.dots = speedSeries.points.size() <= 30;
  speed.series.push_back(std::move(speedSeries));
  charts.push_back(std::move(speed));

  ChartSpec norm{"Gradient norm (before clipping)", "global L2 norm"};
  norm.includeZero = true;
  Series normSeries{
      "grad norm", "#9333ea",
      pointsOf(rows, [](const MetricsRow &r) { return r.gradNorm; }), 2.25};
  normSeries.dots = normSeries.points.size() <= 30;
  norm.series.push_back(std::move(normSeries));
  charts.push_back(std::move(norm));
  return charts;
}

/// Label and value of each summary card.
std::vector<std::pair<std::string, std::string>>
summaryOf(const std::vector<MetricsRow> &rows) {
  std::vector<std::pair<std::string, std::string>> cards;
  const MetricsRow &first = rows.front(), &last = rows.back();
  cards.push_back({"steps", first.step == last.step
                                ? std::to_string(last.step)
                                : std::to_string(first.step) + " – " +
                                      std::to_string(last.step)});
  if (std::isfinite(last.loss))
    cards.push_back({"final loss", format("%.4f", last.loss)});
  const MetricsRow *best = nullptr;
  for (const MetricsRow &row : rows)
    if (std::isfinite(row.loss) && (!best || row.loss < best->loss))
      best = &row;
  if (best)
    cards.push_back({format("lowest loss (step %lld)", (long long)best->step),
                     format("%.4f", best->loss)});
  double tokens = 0, seconds = 0;
  for (const MetricsRow &row : rows) {
    if (std::isfinite(row.tokens))
      tokens += row.tokens;
    if (std::isfinite(row.stepTimeS))
      seconds += row.stepTimeS;
  }
  cards.push_back({"tokens", tokens >= 1e6   ? format("%.2fM", tokens / 1e6)
                             : tokens >= 1e4 ? format("%.1fk", tokens / 1e3)
                                             : format("%.0f", tokens)});
  int64_t total = std::llround(seconds);
  cards.push_back({"training time",
                   total >= 60 ? format("%lldm %02llds", (long long)total / 60,
                                        (long long)total % 60)
                               : format("%.2f s", seconds)});
  if (seconds > 0)
    cards.push_back(
        {"mean throughput", format("%.0f tok/s", tokens / seconds)});
  double peak = 0;
  for (const MetricsRow &row : rows)
    if (std::isfinite(row.lr))
      peak = std::max(peak, row.lr);
  cards.push_back({"peak lr", format("%.3g", peak)});
  return cards;
}

} // namespace

std::string llamac::renderReportHtml(const std::vector<MetricsRow> &rows,
                                     const std::string &title) {
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, "
      "initial-scale=1\">\n<title>" +
      escape(title) + "</title>\n<style>\n";
  html += std::string("body{margin:0;background:#f1f5f9;color:#0f172a;"
                      "font-family:") +
          kFont +
          ";}\n"
          "header{padding:28px 32px 4px;}\n"
          "h1{font-size:24px;margin:0 0 4px;font-weight:650;}\n"
          ".sub{color:#64748b;font-size:14px;}\n"
          ".cards{display:flex;flex-wrap:wrap;gap:12px;padding:16px 32px 4px;}"
          "\n"
          ".card{background:#fff;border:1px solid #e2e8f0;border-radius:10px;"
          "padding:12px 16px;flex:1 1 120px;max-width:240px;}\n"
          ".label{font-size:12px;color:#64748b;text-transform:uppercase;"
          "letter-spacing:.05em;}\n"
          ".value{font-size:20px;font-weight:600;margin-top:4px;"
          "font-variant-numeric:tabular-nums;}\n"
          ".charts{display:grid;grid-template-columns:repeat(auto-fit,"
          "minmax(480px,1fr));gap:16px;padding:16px 32px 32px;}\n"
          ".charts svg{width:100%;height:auto;display:block;}\n"
          "</style>\n</head>\n<body>\n<header>\n<h1>" +
          escape(title) + "</h1>\n<div class=\"sub\">" +
          std::to_string(rows.size()) +
          " optimizer steps · made by llamac report</div>\n</header>\n"
          "<section class=\"cards\">\n";
  for (auto &[label, value] : summaryOf(rows))
    html += "<div class=\"card\"><div class=\"label\">" + escape(label) +
            "</div><div class=\"value\">" + escape(value) + "</div></div>\n";
  html += "</section>\n<section class=\"charts\">\n";
  for (const ChartSpec &chart : chartsOf(rows))
    html += renderChart(chart);
  html += "</section>\n</body>\n</html>\n";
  return html;
}

std::string llamac::renderReportSvg(const std::vector<MetricsRow> &rows,
                                    const std::string &title) {
  std::vector<ChartSpec> charts = chartsOf(rows);
  const double chartW = 560, chartH = 320, gap = 16, margin = 24;
  const double headerH = 84;
  const double width = 2 * chartW + gap + 2 * margin;
  const double height =
      headerH + 2 * chartH + gap + margin; // two rows of two charts
  std::string svg = format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%s\" height=\"%s\" "
      "viewBox=\"0 0 %s %s\" font-family=\"%s\">\n",
      px(width).c_str(), px(height).c_str(), px(width).c_str(),
      px(height).c_str(), kFont);
  svg += format("<title>%s</title>\n", escape(title).c_str());
  svg += format("<rect width=\"%s\" height=\"%s\" fill=\"#f1f5f9\"/>\n",
                px(width).c_str(), px(height).c_str());
  svg += format("<text x=\"%s\" y=\"42\" font-size=\"24\" font-weight=\"650\" "
                "fill=\"#0f172a\">%s</text>\n",
                px(margin).c_str(), escape(title).c_str());
  std::string summary;
  for (auto &[label, value] : summaryOf(rows))
    summary += (summary.empty() ? "" : "   ·   ") + label + " " + value;
  svg += format("<text x=\"%s\" y=\"66\" font-size=\"14\" "
                "fill=\"#64748b\">%s</text>\n",
                px(margin).c_str(), escape(summary).c_str());
  for (size_t i = 0; i < charts.size(); ++i) {
    double x = margin + double(i % 2) * (chartW + gap);
    double y = headerH + double(i / 2) * (chartH + gap);
    svg += renderChart(charts[i], x, y, /*nested=*/true);
  }
  svg += "</svg>\n";
  return svg;
}
