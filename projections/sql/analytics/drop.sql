-- Drops one version of sales_analytics (both sinks accept it). `{prefix}` is `sales_analytics_v{N}_`.
DROP TABLE IF EXISTS {prefix}order_lines;
DROP TABLE IF EXISTS {prefix}order_status;
DROP TABLE IF EXISTS {prefix}cancellations;
DROP TABLE IF EXISTS {prefix}payments;
